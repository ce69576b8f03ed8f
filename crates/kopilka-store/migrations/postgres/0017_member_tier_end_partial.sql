-- Most members have no admin-assigned tier, so the index of such tiers' ends holds only the
-- members that have one (the tiers job asks for `manual_tier_until IS NOT NULL`). Over every
-- member and leading with the tenant, it was also a way to find one member by (tenant_id, id):
-- with statistics older than the table, PostgreSQL found a batch's members by it, reading every
-- member of the tenant for each (514 index entries per search at 10,000 members; BENCHMARKS.md).
DROP INDEX members_manual_tier_until;
CREATE INDEX members_manual_tier_until ON members (tenant_id, manual_tier_until, id)
    WHERE manual_tier_until IS NOT NULL;

