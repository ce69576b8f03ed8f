-- The loyalty side of a member (tier, segments, campaigns, purchase statistics, rule counters) as
-- one JSON document: it is read and written with the member's row, so a purchase needs no extra
-- query to know whether it is the member's first or what a capped rule already gave.
ALTER TABLE members ADD COLUMN state TEXT NOT NULL DEFAULT '{}';
