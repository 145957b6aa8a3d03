CREATE VIEW output.by_country AS
SELECT country,
       count(*)                 AS orders,
       sum(amount)              AS revenue,
       round(avg(amount), 2)    AS avg_amount,
       min(ordered_at)          AS first_order
FROM input.orders
GROUP BY country
ORDER BY country;
