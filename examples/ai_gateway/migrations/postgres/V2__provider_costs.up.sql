-- What each provider cost the whole fleet, and what the cache saved on its answers.
CREATE VIEW provider_costs AS
SELECT provider,
       count(*)::bigint                                          AS requests,
       (count(*) FILTER (WHERE source LIKE '%_hit'))::bigint     AS cached,
       coalesce(sum(input_tokens), 0)::bigint                    AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint                   AS output_tokens,
       coalesce(sum(cost_micros), 0)::bigint                     AS cost_micros,
       coalesce(sum(saved_micros), 0)::bigint                    AS saved_micros
FROM usage_events
GROUP BY provider;
