DROP VIEW provider_costs;
