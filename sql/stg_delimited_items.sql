-- Raw delimited item file -> staged catalog rows (key, title without a trailing "(YEAR)" if asked, year, extra text).
with src as (
    select *
    from read_csv(
        $path, delim = $delimiter, header = $header, columns = $columns, quote = $quote, escape = $quote,
        encoding = $encoding, max_line_size = $max_line_bytes, auto_detect = false, strict_mode = true,
        store_rejects = true
    ) as t
),

raw as (
    select
        nullif(trim(struct_extract(src, $id_col)), '') as item_key,
        trim(coalesce(struct_extract(src, $title_col), '')) as raw_title,
        case when $has_extra then nullif(trim(struct_extract(src, $extra_col)), '') end as extra
    from src
),

final as (
    select
        item_key,
        case when $strip_year then trim(regexp_replace(raw_title, '\s*\((\d{4})\)\s*$', '')) else raw_title end as title,
        case when $strip_year then try_cast(nullif(regexp_extract(raw_title, '\((\d{4})\)\s*$', 1), '') as integer) end as year,
        extra,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from raw
)

select * from final
