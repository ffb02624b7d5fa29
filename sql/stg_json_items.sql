-- JSON-lines item metadata (asin or parent_asin, title) -> staged catalog rows. 2014 metadata lines (Python dict
-- literals) arrive here already rewritten as JSON; extra: main_category (2023), brand, or the first category path.
with src as (
    select line
    from read_csv(
        $path, delim = $delimiter, header = false, columns = {'line': 'VARCHAR'}, quote = '', escape = '',
        max_line_size = $max_line_bytes, auto_detect = false, strict_mode = true, store_rejects = true
    )
),

parsed as (
    select line, try(json(line)) as j from src
),

checked as (
    select
        line,
        coalesce(json_type(j) = 'OBJECT', false) as ok,
        json_type(coalesce(j -> 'parent_asin', j -> 'asin')) as item_type,
        j
    from parsed
),

final as (
    select
        coalesce(j ->> 'parent_asin', j ->> 'asin') as item_key,
        trim(coalesce(j ->> 'title', '')) as title,
        cast(null as integer) as year,
        nullif(trim(coalesce(
            j ->> 'main_category', j ->> 'brand',
            array_to_string(try(from_json(j -> '$.categories[0]', '["VARCHAR"]')), ' > '), ''
        )), '') as extra,
        case
            when not ok then 'line is neither a JSON object nor a Python dict literal: ' || coalesce(nullif(left(line, 200), ''), 'empty line')
            when item_type in ('OBJECT', 'ARRAY') then 'item id is a JSON ' || lower(item_type) || ', not a value'
        end as stage_reason,
        $source_file as source_file
    from checked
)

select * from final
