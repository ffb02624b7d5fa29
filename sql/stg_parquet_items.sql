-- Generic Parquet item file -> staged catalog rows, columns picked by name.
with src as (
    select * from read_parquet($path) as t
),

final as (
    select
        nullif(trim(cast(struct_extract(src, $id_col) as varchar)), '') as item_key,
        trim(coalesce(cast(struct_extract(src, $title_col) as varchar), '')) as title,
        cast(null as integer) as year,
        case when $has_extra then nullif(trim(cast(struct_extract(src, $extra_col) as varchar)), '') end as extra,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from src
)

select * from final
