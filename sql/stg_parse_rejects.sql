-- Lines DuckDB's CSV reader rejected in the last scan on this connection (one row per line).
with errors as (
    select
        line,
        string_agg(distinct error_type, ', ') as error_types,
        any_value(csv_line) as csv_line,
        any_value(error_message) as error_message
    from reject_errors
    group by line
),

final as (
    select
        $source_file as source_file,
        cast(line as bigint) as line,
        case
            when error_types like '%LINE SIZE OVER MAXIMUM%' then 'line longer than ' || $max_line_bytes || ' bytes'
            when error_types like '%INVALID ENCODING%' then 'invalid ' || $encoding || ' byte sequence'
            when (error_types like '%MISSING COLUMNS%' or error_types like '%TOO MANY COLUMNS%')
                and $delimiter <> '' and not contains(coalesce(csv_line, ''), $delimiter)
                then 'wrong column count (' || split_part(error_message, chr(10), 1) || '): no '
                || $delimiter_name || ' in the line: wrong delimiter?'
            when error_types like '%MISSING COLUMNS%'
                then 'wrong column count (' || split_part(error_message, chr(10), 1) || '): too few fields'
            when error_types like '%TOO MANY COLUMNS%'
                then 'wrong column count (' || split_part(error_message, chr(10), 1) || '): too many fields'
            else lower(error_types) || ': ' || split_part(error_message, chr(10), 1)
        end as reason,
        left(csv_line, 1000) as raw
    from errors
)

select * from final order by line
