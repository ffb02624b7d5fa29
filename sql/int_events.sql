-- Staged interaction rows -> every row typed, with a status:
-- 'quarantined' (with a reason), 'duplicate' (same user, item and time as an earlier row),
-- 'filtered_rating' (below the positive-feedback threshold) or 'kept'.
with staged as (
    select *, list_position($staged, filename) as file_rank, file_row_number + 1 as src_row
    from read_parquet($staged, filename = true, file_row_number = true)
),

catalog as (
    select item_key from read_parquet($catalog) where status = 'kept'
),

typed as (
    select
        s.*,
        case s.ts_unit
            when 's' then try_cast(s.ts_raw as double)
            when 'ms' then try_cast(s.ts_raw as double) / 1000.0
            when 'iso' then epoch(try_cast(s.ts_raw as timestamp))
        end as ts,
        try_cast(s.rating_raw as double) as rating,
        c.item_key is not null as in_catalog
    from staged as s
    left join catalog as c on s.item_key = c.item_key
),

checked as (
    select
        *,
        case
            when stage_reason is not null then stage_reason
            when user_key is null then 'missing user id'
            when item_key is null then 'missing item id'
            when $numeric_ids and not regexp_full_match(user_key, '[+-]?[0-9]{1,18}') then 'user id is not an integer: ' || user_key
            when $numeric_ids and not regexp_full_match(item_key, '[+-]?[0-9]{1,18}') then 'item id is not an integer: ' || item_key
            when $has_time and ts_raw is null then 'missing timestamp'
            when $has_time and (ts is null or isnan(ts) or isinf(ts)) then 'timestamp is not a number: ' || ts_raw
            when $has_time and ts <= 0 then 'timestamp is zero or negative: ' || ts_raw
            when $has_time and ts < $min_ts then 'timestamp is before ' || strftime(to_timestamp($min_ts), '%Y-%m-%d') || ': ' || ts_raw
            when $has_time and ts > $max_ts then 'timestamp is in the future: ' || ts_raw
            when rating_raw is not null and rating is null then 'rating is not a number: ' || rating_raw
            when isnan(rating) or isinf(rating) then 'rating is not finite: ' || rating_raw
            when abs(rating) > $max_abs_rating then 'rating is out of range (beyond +-' || $max_abs_rating || '): ' || rating_raw
            when not in_catalog then 'item ' || item_key || ' is not in the catalog (missing or quarantined item row)'
        end as reason
    from typed
),

ranked as (
    select
        *,
        row_number() over (
            partition by
                reason is null, user_key, item_key, ts,
                case when ts is null then file_rank end,
                case when ts is null then src_row end
            order by file_rank, src_row
        ) as dup_rank
    from checked
),

final as (
    select
        source_file,
        src_row,
        file_rank,
        user_key,
        item_key,
        ts,
        ts_raw,
        rating,
        rating_raw,
        given_split,
        reason,
        case
            when reason is not null then 'quarantined'
            when dup_rank > 1 then 'duplicate'
            when $min_rating is not null and (rating is null or rating < $min_rating) then 'filtered_rating'
            else 'kept'
        end as status
    from ranked
)

select * from final
