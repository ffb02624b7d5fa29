-- The split carried by the source (e.g. the PatchRec paper's files): target positions keep their
-- given split; positions without one are history only.
with events as (
    select
        user_idx,
        given_split,
        row_number() over (partition by user_idx order by event_time, ordinal) - 1 as position
    from read_parquet($interactions)
),

final as (
    select cast(user_idx as integer) as user_idx, cast(position as integer) as position, given_split as split
    from events
    where position >= $min_history and given_split is not null
)

select * from final order by user_idx, position
