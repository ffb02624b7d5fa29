-- Staged interaction rows -> every row typed, with a status:
-- 'quarantined' (with a reason), 'duplicate' (same user, item and time as an earlier row),
-- 'filtered_rating' (below the positive-feedback threshold) or 'kept'.
-- The CTEs are 'not materialized': typed and checked are each read twice (de-duplication), and a materialized
-- copy of every row would spill to disk under the memory cap; the status is an ENUM because Parquet writes a
-- dictionary code for it instead of hashing a string per row (it reads back as VARCHAR).
with staged as not materialized (
    select *, list_position($staged, filename) as file_rank, file_row_number + 1 as src_row
    from read_parquet($staged, filename = true, file_row_number = true)
),

catalog as not materialized (  -- each catalog key's id check is done once here, not once per event
    select item_key as catalog_key, regexp_full_match(item_key, '[+-]?[0-9]{1,18}') as numeric_key
    from read_parquet($catalog) where status = 'kept'
),

typed as not materialized (
    select
        s.*,
        case s.ts_unit
            when 's' then try_cast(s.ts_raw as double)
            when 'ms' then try_cast(s.ts_raw as double) / 1000.0
            when 'iso' then epoch(try_cast(s.ts_raw as timestamp))
        end as ts,
        try_cast(s.rating_raw as double) as rating
    from staged as s
),

checked as not materialized (
    select
        t.*,
        c.catalog_key is not null as in_catalog,
        case
            when stage_reason is not null then stage_reason
            when user_key is null then 'missing user id'
            when item_key is null then 'missing item id'
            when $numeric_ids and not regexp_full_match(user_key, '[+-]?[0-9]{1,18}') then 'user id is not an integer: ' || user_key
            when $numeric_ids and not coalesce(numeric_key, regexp_full_match(item_key, '[+-]?[0-9]{1,18}')) then 'item id is not an integer: ' || item_key
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
    from typed as t
    left join catalog as c on t.item_key = c.catalog_key
),

-- De-duplication without a window over every row: only (user, item, time) triples whose hash repeats can hold a
-- duplicate; of each such triple's valid rows, the first (file, row) is kept.
repeated as (
    select h from (select hash(user_key, item_key, ts) as h from typed where ts is not null)
    group by h having count(*) > 1
),

firsts as (
    select user_key, item_key, ts, min(file_rank * 4294967296 + src_row) as first_ord
    from checked
    where reason is null and hash(user_key, item_key, ts) in (select h from repeated)
    group by user_key, item_key, ts
),

deduplicated as (
    select
        c.*,
        coalesce(c.file_rank * 4294967296 + c.src_row <> f.first_ord, false) as is_duplicate
    from checked as c
    left join firsts as f on c.user_key = f.user_key and c.item_key = f.item_key and c.ts = f.ts
),

final as (
    select
        case when reason is not null then source_file end as source_file,  -- read only for the quarantine
        src_row,
        file_rank,
        user_key,
        item_key,
        ts,
        case when reason is not null then ts_raw end as ts_raw,  -- the raw text matters only to the quarantine
        rating,
        case when reason is not null then rating_raw end as rating_raw,
        given_split,
        reason,
        cast(case
            when reason is not null then 'quarantined'
            when is_duplicate then 'duplicate'
            when $min_rating is not null and (rating is null or rating < $min_rating) then 'filtered_rating'
            else 'kept'
        end as enum('kept', 'quarantined', 'duplicate', 'filtered_rating')) as status
    from deduplicated
)

select * from final
