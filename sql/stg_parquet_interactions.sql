-- Generic Parquet interaction file -> staged rows, columns picked by name.
with src as (
    select * from read_parquet($path) as t
),

final as (
    select
        nullif(trim(cast(struct_extract(src, $user_col) as varchar)), '') as user_key,
        nullif(trim(cast(struct_extract(src, $item_col) as varchar)), '') as item_key,
        cast(struct_extract(src, $time_col) as varchar) as ts_raw,
        -- an ENUM: Parquet writes a dictionary code per row instead of a string
        cast($time_unit as enum('s', 'ms', 'iso', 'none')) as ts_unit,
        case when $has_rating then cast(struct_extract(src, $rating_col) as varchar) end as rating_raw,
        cast(null as varchar) as given_split,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from src
)

select * from final
