-- A member's own IANA time zone and message language; NULL means the tenant's notification
-- settings apply.
ALTER TABLE members ADD COLUMN time_zone TEXT;
ALTER TABLE members ADD COLUMN language TEXT;
