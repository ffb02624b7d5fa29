-- The PatchRec paper's processed sequences (one row per user, inclusive target ranges per split)
-- -> one staged row per interaction, in sequence order, carrying the paper's split.
with src as (
    select * from read_parquet($path)
),

unnested as (
    select
        user_index,
        unnest(items) as item_id,
        unnest(generate_series(0, len(items) - 1)) as pos,
        train_first, train_last, val_first, val_last, test_first, test_last
    from src
),

final as (
    select
        cast(user_index as varchar) as user_key,
        cast(item_id as varchar) as item_key,
        cast(null as varchar) as ts_raw,
        -- an ENUM: Parquet writes a dictionary code per row instead of a string
        cast('none' as enum('s', 'ms', 'iso', 'none')) as ts_unit,
        cast(null as varchar) as rating_raw,
        case
            when pos between train_first and train_last then 'train'
            when pos between val_first and val_last then 'val'
            when pos between test_first and test_last then 'test'
        end as given_split,
        cast(null as varchar) as stage_reason,
        $source_file as source_file
    from unnested
    order by user_index, pos
)

select * from final
