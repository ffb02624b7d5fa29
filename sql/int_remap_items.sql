-- Re-key one staged interaction file through an item key map; an id missing from the map is a reason.
with staged as (
    select * from read_parquet($path, file_row_number = true)
),

keymap as (
    select source_key, any_value(target_key) as target_key from read_parquet($keymap) group by source_key
),

final as (
    select
        s.user_key,
        coalesce(k.target_key, s.item_key) as item_key,
        s.ts_raw,
        s.ts_unit,
        s.rating_raw,
        s.given_split,
        coalesce(
            s.stage_reason,
            case when s.item_key is not null and k.target_key is null then 'item id ' || s.item_key || ' is not in the item map' end
        ) as stage_reason,
        s.source_file
    from staged as s
    left join keymap as k on s.item_key = k.source_key
    order by s.file_row_number
)

select * from final
