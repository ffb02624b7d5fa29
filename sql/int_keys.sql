-- Stable dense indices: keys from earlier runs keep their index; new keys are appended in
-- numeric-then-text key order.
with previous as (
    select key, idx from read_parquet($previous)
),

incoming as (
    select distinct cast(struct_extract(t, $key_col) as varchar) as key from read_parquet($keys_from) as t
    where t.status = 'kept'
),

new_keys as (
    select
        i.key,
        (select coalesce(max(idx), -1) from previous)
        + row_number() over (order by try_cast(i.key as hugeint) nulls last, i.key) as idx
    from incoming as i
    anti join previous as p on i.key = p.key
),

final as (
    select key, cast(idx as integer) as idx from previous
    union all
    select key, cast(idx as integer) as idx from new_keys
)

select * from final order by idx
