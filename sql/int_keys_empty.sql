-- An empty key map (the first run has no earlier keys): the columns of int_keys, no rows.
with final as (
    select cast(null as varchar) as key, cast(null as integer) as idx
    where false
)

select * from final
