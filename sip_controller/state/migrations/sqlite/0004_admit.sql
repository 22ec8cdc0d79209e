-- 0004 (#18): nothing changes in SQLite. PostgreSQL gains sipctl_admit (the whole admission of a new call in one
-- statement); here Store.admit is one Python transaction on the store's thread. The number keeps both dialects in
-- step.
SELECT 1;
