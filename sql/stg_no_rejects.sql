-- The reject table of a file read without line-level rejects (Parquet input): the columns, no rows.
with final as (
    select
        cast(null as varchar) as source_file,
        cast(null as bigint) as line,
        cast(null as varchar) as reason,
        cast(null as varchar) as raw
    where false
)

select * from final
