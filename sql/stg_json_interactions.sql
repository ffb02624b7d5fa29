-- JSON-lines reviews (Amazon 2014/2018: reviewerID, asin, overall, unixReviewTime [s];
-- 2023: user_id, parent_asin or asin, rating, timestamp [ms]) -> staged rows. Each line is read as
-- text first, so a line that is not JSON becomes a quarantined row instead of failing the file.
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
        json_type(coalesce(j -> 'reviewerID', j -> 'user_id')) as user_type,
        json_type(coalesce(j -> 'parent_asin', j -> 'asin')) as item_type,
        j
    from parsed
),

final as (
    select
        coalesce(j ->> 'reviewerID', j ->> 'user_id') as user_key,
        coalesce(j ->> 'parent_asin', j ->> 'asin') as item_key,
        coalesce(j ->> 'unixReviewTime', j ->> 'timestamp') as ts_raw,
        -- an ENUM: Parquet writes a dictionary code per row instead of a string
        cast(case when j ->> 'unixReviewTime' is not null then 's' else 'ms' end as enum('s', 'ms', 'iso', 'none')) as ts_unit,
        coalesce(j ->> 'overall', j ->> 'rating') as rating_raw,
        cast(null as varchar) as given_split,
        case
            when not ok then 'line is not a JSON object: ' || coalesce(nullif(left(line, 200), ''), 'empty line')
            when user_type in ('OBJECT', 'ARRAY') then 'user id is a JSON ' || lower(user_type) || ', not a value'
            when item_type in ('OBJECT', 'ARRAY') then 'item id is a JSON ' || lower(item_type) || ', not a value'
        end as stage_reason,
        $source_file as source_file
    from checked
)

select * from final
