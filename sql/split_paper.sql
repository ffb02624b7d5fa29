-- Paper protocol: a global chronological split of all interactions (e.g. 96/2/2 %); every target
-- position with >= $min_history earlier items of the same user is one sample.
with events as (
    select
        user_idx,
        row_number() over (partition by user_idx order by event_time, ordinal) - 1 as position,
        row_number() over (order by event_time, ordinal) - 1 as global_rank,
        count(*) over () as n
    from read_parquet($interactions)
),

final as (
    select
        cast(user_idx as integer) as user_idx,
        cast(position as integer) as position,
        case
            when global_rank < floor(n * $train_ratio) then 'train'
            when global_rank < floor(n * ($train_ratio + $val_ratio)) then 'val'
            else 'test'
        end as split
    from events
    where position >= $min_history
)

select * from final order by user_idx, position
