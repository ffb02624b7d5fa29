-- A delimited key map (e.g. Amazon ASIN <-> dense id) -> (source_key, target_key) text pairs.
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
        nullif(trim(struct_extract(src, $source_col)), '') as source_key,
        nullif(trim(struct_extract(src, $target_col)), '') as target_key,
        $source_file as source_file
    from src
)

select * from final
