-- User key map plus per-user interaction counts -> the canonical users table.
with keys as (
    select key, idx from read_parquet($user_keys)
),

counts as (
    select user_idx, count(*) as n_interactions, min(event_time) as first_event, max(event_time) as last_event
    from read_parquet($interactions)
    group by user_idx
),

final as (
    select
        k.idx as user_idx,
        k.key as user_key,
        coalesce(c.n_interactions, 0) as n_interactions,
        c.first_event,
        c.last_event
    from keys as k
    left join counts as c on k.idx = c.user_idx
)

select * from final order by user_idx
