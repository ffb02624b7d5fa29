-- Canonical interactions -> one chronological sequence per user (ties broken by source order).
with final as (
    select
        user_idx,
        list(item_idx order by event_time, ordinal) as items,
        list(event_time order by event_time, ordinal) as times
    from read_parquet($interactions)
    group by user_idx
)

select * from final order by user_idx
