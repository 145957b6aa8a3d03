-- Orders from a shop's JSON-lines export, summarised two ways.
--
-- A scope is a view, and a view has no row order: sort the output files
-- afterwards if you need one.
--
-- Each line is one order:
--   {"order_id": "<uuid>", "ordered_at": "2024-05-01T08:55:49Z",
--    "customer_email": "…", "country": "GB", "amount": 229, "items": 2,
--    "status": "paid" | "shipped" | "cancelled" | "refunded"}

-- A helper view in the default schema: not a scope, only shared by the two
-- scopes below. Cancelled and refunded orders are not sales.
CREATE VIEW sales AS
SELECT
    order_id,
    CAST(ordered_at AS TIMESTAMP)                   AS ordered_at,
    CAST(CAST(ordered_at AS TIMESTAMP) AS DATE)     AS order_date,
    lower(trim(customer_email))                     AS customer_email,
    upper(trim(country))                            AS country,
    CAST(amount AS DOUBLE)                          AS amount,
    items
FROM input.data
WHERE status IN ('paid', 'shipped');

-- Scope 1: one row per day and country.
CREATE VIEW output.daily_totals AS
SELECT
    order_date,
    country,
    count(*)               AS orders,
    sum(items)             AS items,
    round(sum(amount), 2)  AS revenue,
    round(avg(amount), 2)  AS average_order
FROM sales
GROUP BY order_date, country;

-- Scope 2: the orders at or above the `large_order_threshold` parameter.
-- meta.parameters holds every value as text.
CREATE VIEW output.large_orders AS
SELECT
    s.order_id,
    s.ordered_at,
    s.customer_email,
    s.country,
    s.amount
FROM sales AS s
CROSS JOIN (
    SELECT CAST(value AS DOUBLE) AS threshold
    FROM meta.parameters
    WHERE name = 'large_order_threshold'
) AS p
WHERE s.amount >= p.threshold;
