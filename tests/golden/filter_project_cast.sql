-- The benchmark's job in miniature: filter, project, cast.
CREATE VIEW output.result AS
SELECT order_id,
       lower(customer)                    AS customer,
       upper(country)                     AS country,
       CAST(amount AS DOUBLE) * quantity  AS total,
       CAST(ordered_at AS DATE)           AS day
FROM input.data
WHERE status <> 'cancelled' AND quantity > 1
ORDER BY order_id;
