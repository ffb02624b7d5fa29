-- Raw delimited interaction file -> staged rows (all text). Malformed lines go to DuckDB's reject tables.
with src as (
    select *
    from read_csv(
        $path, delim = $delimiter, header = $header, columns = $columns, quote = $quote, escape = $quote,
        encoding = $encoding, max_line_size = $max_line_bytes, auto_detect = false, strict_mode = true,
        store_rejects = true
    ) as t
),

final as (
    select
        nullif(trim(struct_extract(src, $user_col)), '') as user_key,
        nullif(trim(struct_extract(src, $item_col)), '') as item_key,
        nullif(trim(struct_extract(src, $time_col)), '') as ts_raw,
        -- an ENUM: Parquet writes a dictionary code per row instead of a string
        cast($time_unit as enum('s', 'ms', 'iso', 'none')) as ts_unit,
        case when $has_rating then nullif(trim(struct_extract(src, $rating_col)), '') end as rating_raw,
        cast(null as varchar) as given_split,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from src
)

select * from final
