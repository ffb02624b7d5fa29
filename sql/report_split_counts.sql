-- Samples per split, plus the number of distinct users with at least one sample (as split 'users').
with final as (
    select split, count(*) as n from read_parquet($path) group by split
    union all
    select 'users' as split, count(distinct user_idx) as n from read_parquet($path)
)

select * from final
