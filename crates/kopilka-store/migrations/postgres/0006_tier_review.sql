-- Members holding a tier, by the window their tier was last reviewed for: the tier review job
-- finds the members due without reading every member's state.
CREATE INDEX members_tier_review ON members (tenant_id, ((state)::jsonb #>> '{tier_reviewed}'), id)
    WHERE ((state)::jsonb #>> '{tier}') IS NOT NULL;
