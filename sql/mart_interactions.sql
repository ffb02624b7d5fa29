-- Kept events -> the canonical interactions table (dense indices, original keys, time, rating).
with events as (
    select * from read_parquet($events) where status = 'kept'
),

users as (
    select key, idx from read_parquet($user_keys)
),

items as (
    select key, idx from read_parquet($item_keys)
),

final as (
    select
        u.idx as user_idx,
        i.idx as item_idx,
        e.user_key,
        e.item_key,
        to_timestamp(e.ts) as event_time,
        e.rating,
        e.given_split,
        cast(e.file_rank as bigint) * 4294967296 + e.src_row as ordinal
    from events as e
    join users as u on e.user_key = u.key
    join items as i on e.item_key = i.key
)

select * from final order by user_idx, event_time, ordinal
