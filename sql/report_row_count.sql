-- The number of rows of a Parquet file (read from its footer, not by scanning).
with final as (
    select count(*) as n from read_parquet($path)
)

select * from final
