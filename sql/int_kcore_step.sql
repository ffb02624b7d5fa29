-- One k-core pass over kept events: keep those whose user and item both have >= $k of them.
with events as (
    select * from read_parquet($path) where status = 'kept'
),

counted as (
    select
        *,
        count(*) over (partition by user_key) as user_n,
        count(*) over (partition by item_key) as item_n
    from events
),

final as (
    select * exclude (user_n, item_n) from counted where user_n >= $k and item_n >= $k
)

select * from final
