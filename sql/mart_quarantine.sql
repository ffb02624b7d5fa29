-- Every rejected input row, with where it came from and why: parse rejects, item rows, events.
with parse_rejects as (
    select 'parse' as stage, source_file, line, cast(null as bigint) as row, reason, raw
    from read_parquet($parse_rejects)
),

item_rejects as (
    select
        'items' as stage, source_file, cast(null as bigint) as line, src_row as row, reason,
        left(concat_ws(' | ', item_key, title), 1000) as raw
    from read_parquet($catalog)
    where reason is not null
),

event_rejects as (
    select
        'interactions' as stage, source_file, cast(null as bigint) as line, src_row as row, reason,
        left(concat_ws(' | ', user_key, item_key, ts_raw, rating_raw), 1000) as raw
    from read_parquet($events)
    where status = 'quarantined'
),

final as (
    select * from parse_rejects
    union all
    select * from item_rejects
    union all
    select * from event_rejects
)

select * from final order by stage, source_file, line, row
