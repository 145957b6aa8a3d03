-- meta.current_execution and meta.parameters are visible to the script.
CREATE VIEW output.meta AS
SELECT e.connector_api_name, e.trigger_type, e.is_dry_run, e.source_file_name,
       p.name, p.value
FROM meta.current_execution e CROSS JOIN meta.parameters p
ORDER BY p.name;
