-- Temporary views feed two scopes; one is materialised.
CREATE TEMP VIEW shipped AS SELECT * FROM input.data WHERE status = 'shipped';
CREATE TABLE output.customers AS
  SELECT DISTINCT customer, zip FROM shipped ORDER BY customer;
CREATE VIEW output.big_orders AS
  SELECT order_id, amount FROM shipped WHERE amount > 100 ORDER BY order_id;
