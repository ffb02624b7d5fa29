-- Kept catalog rows -> the canonical items table.
with catalog as (
    select * from read_parquet($catalog) where status = 'kept'
),

keys as (
    select key, idx from read_parquet($item_keys)
),

final as (
    select k.idx as item_idx, c.item_key, c.title, c.year, c.extra
    from catalog as c
    join keys as k on c.item_key = k.key
)

select * from final order by item_idx
