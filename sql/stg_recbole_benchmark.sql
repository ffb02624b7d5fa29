-- One RecBole pre-split benchmark file (user_id, item_id_list = space-separated history, item_id = target)
-- -> staged interactions in sequence order: each row's target carries the file's split; the history of
-- a user's first row in the train file is emitted first, without a split (history only).
with src as (
    select *
    from read_csv(
        $path, delim = '\t', header = true, columns = $columns, quote = '', escape = '', encoding = 'utf-8',
        max_line_size = $max_line_bytes, auto_detect = false, strict_mode = true, store_rejects = true
    ) as t
),

numbered as (
    select
        row_number() over () as rn,
        trim(struct_extract(src, $user_col)) as user_key,
        trim(struct_extract(src, $item_col)) as item_key,
        string_split(trim(coalesce(struct_extract(src, $history_col), '')), ' ') as history
    from src
),

first_rows as (
    select * from numbered
    where $split = 'train'
    qualify rn = min(rn) over (partition by user_key)
),

history_items as (
    select rn, user_key, unnest(list_filter(history, lambda x: x <> '')) as item_key, 0 as part,
        unnest(generate_series(1, len(list_filter(history, lambda x: x <> '')))) as k, cast(null as varchar) as given_split
    from first_rows
),

targets as (
    select rn, user_key, item_key, 1 as part, 0 as k, $split as given_split from numbered
),

final as (
    select
        user_key,
        nullif(item_key, '') as item_key,
        cast(null as varchar) as ts_raw,
        'none' as ts_unit,
        cast(null as varchar) as rating_raw,
        given_split,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from (select * from history_items union all select * from targets)
    order by rn, part, k
)

select * from final
