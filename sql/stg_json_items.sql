-- JSON-lines item metadata (asin or parent_asin, title) -> staged catalog rows.
with src as (
    select line
    from read_csv(
        $path, delim = $delimiter, header = false, columns = {'line': 'VARCHAR'}, quote = '', escape = '',
        max_line_size = $max_line_bytes, auto_detect = false, strict_mode = true, store_rejects = true
    )
),

parsed as (
    select
        line,
        json_valid(line) and json_type(line) = 'OBJECT' as ok,
        case when json_valid(line) then json(line) end as j
    from src
),

final as (
    select
        coalesce(j ->> 'parent_asin', j ->> 'asin') as item_key,
        trim(coalesce(j ->> 'title', '')) as title,
        cast(null as integer) as year,
        nullif(trim(coalesce(j ->> 'main_category', j ->> 'brand', '')), '') as extra,
        case when not ok then 'line is not a JSON object: ' || left(line, 200) end as stage_reason,
        $source_file as source_file
    from parsed
)

select * from final
