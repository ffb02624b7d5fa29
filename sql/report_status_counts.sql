-- Row counts by status (kept, quarantined, duplicate, filtered_rating) of a typed events or catalog table.
with final as (
    select status, count(*) as n from read_parquet($path) group by status
)

select * from final order by status
