-- Staged item rows -> every row with a status: 'kept' or 'quarantined' (with a reason).
-- A title is visible when something remains after removing whitespace, separators, control and format
-- characters (zero-width, BOM, soft hyphen), lone combining marks and the Hangul / Braille blank fillers.
with staged as (
    select
        *,
        list_position($staged, filename) as file_rank,
        file_row_number + 1 as src_row,
        regexp_replace(
            coalesce(title, ''), '[\s\p{Z}\p{Cc}\p{Cf}\p{M}\x{115F}\x{1160}\x{3164}\x{FFA0}\x{2800}]', '', 'g'
        ) <> '' as visible
    from read_parquet($staged, filename = true, file_row_number = true)
),

ranked as (
    select
        *,
        row_number() over (
            partition by item_key, stage_reason is null and visible
            order by file_rank, src_row
        ) as key_rank
    from staged
),

checked as (
    select
        source_file,
        src_row,
        file_rank,
        item_key,
        title,
        year,
        extra,
        case
            when stage_reason is not null then stage_reason
            when item_key is null then 'missing item id'
            when title is null or title = '' then 'title is empty'
            when not visible then 'title has no visible character'
            when key_rank > 1 then 'duplicate item id (its first row is kept)'
        end as reason
    from ranked
),

final as (
    select *, case when reason is null then 'kept' else 'quarantined' end as status from checked
)

select * from final
