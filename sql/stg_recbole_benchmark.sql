-- One RecBole pre-split benchmark file (user_id, item_id_list = space-separated history, item_id = target)
-- -> one staged window row per line, carrying the file's split; patchrec.data.windows rebuilds each
-- user's sequence from all of that user's windows, whatever their order.
with src as (
    select *
    from read_csv(
        $path, delim = '\t', header = true, columns = $columns, quote = '', escape = '', encoding = 'utf-8',
        max_line_size = $max_line_bytes, auto_detect = false, strict_mode = true, store_rejects = true
    ) as t
),

final as (
    select
        nullif(trim(struct_extract(src, $user_col)), '') as user_key,
        nullif(trim(struct_extract(src, $item_col)), '') as item_key,
        cast(null as varchar) as ts_raw,
        'none' as ts_unit,
        cast(null as varchar) as rating_raw,
        $split as given_split,
        cast(null as varchar) as stage_reason,
        $source_file as source_file,
        trim(coalesce(struct_extract(src, $history_col), '')) as history
    from src
)

select * from final
