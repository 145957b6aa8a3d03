CREATE VIEW output.ranked AS
SELECT order_id, customer, amount,
       rank() OVER (PARTITION BY country ORDER BY amount DESC) AS rank_in_country,
       coalesce(CAST(quantity AS VARCHAR), 'unknown')          AS quantity,
       zip IS NULL                                             AS no_zip
FROM input.data
ORDER BY order_id;
