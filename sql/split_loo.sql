-- Leave-one-out: each user's last item is test, the second-last validation, earlier ones train;
-- every target position with >= $min_history earlier items is one sample.
with events as (
    select
        user_idx,
        row_number() over (partition by user_idx order by event_time, ordinal) - 1 as position,
        count(*) over (partition by user_idx) as n
    from read_parquet($interactions)
),

final as (
    select
        cast(user_idx as integer) as user_idx,
        cast(position as integer) as position,
        case when position = n - 1 then 'test' when position = n - 2 then 'val' else 'train' end as split
    from events
    where position >= $min_history
)

select * from final order by user_idx, position
