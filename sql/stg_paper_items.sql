-- The PatchRec paper's catalog (item_id, title without year) -> staged catalog rows.
with final as (
    select
        cast(item_id as varchar) as item_key,
        trim(coalesce(title, '')) as title,
        cast(null as integer) as year,
        cast(null as varchar) as extra,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from read_parquet($path)
)

select * from final
