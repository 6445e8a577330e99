-- Plain DateTime and a microsecond column instead of DateTime64, and the old-style-free ENGINE syntax with ORDER BY:
-- runs on ClickHouse 18.16 and on current releases. ReplacingMergeTree collapses rows with the same sorting key,
-- and reads use FINAL, so a redelivered event never shows twice.
CREATE TABLE IF NOT EXISTS `{database}`.item_events (
    event_id      String,
    item_id       UInt64,
    campaign_id   UInt64,
    name          String,
    description   Nullable(String),
    priority      Int64,
    removed       UInt8,
    kind          String,
    event_time    DateTime,
    event_time_us UInt64
) ENGINE = ReplacingMergeTree() ORDER BY (campaign_id, item_id, event_id);
