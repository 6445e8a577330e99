INSERT IGNORE INTO sum_total (id, total) VALUES (1, 0);
