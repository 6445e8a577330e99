-- The lifetime sum: one row, id = 1. DECIMAL(65,0) is MySQL's widest exact type (10^65 - 1).
CREATE TABLE IF NOT EXISTS sum_total (
    id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    total DECIMAL(65, 0) NOT NULL DEFAULT 0
) ENGINE = InnoDB;
