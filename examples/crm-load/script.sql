-- One row per contact, with its company's columns alongside; the load steps
-- write the company first and hand its id to the contact.
CREATE VIEW output.people AS
SELECT
    trim(company)                          AS company,
    lower(trim(website))                   AS domain,
    trim(industry)                         AS industry,
    trim(first_name)                       AS first_name,
    trim(last_name)                        AS last_name,
    lower(trim(email))                     AS email,
    trim(lifecycle_stage)                  AS stage
FROM input.data;
