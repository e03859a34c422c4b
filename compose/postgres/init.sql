-- One database per service (each owns its tables; nothing is shared but the server).
-- Runs once, on the first start of an empty data volume.
CREATE DATABASE orders;
CREATE DATABASE payments;
CREATE DATABASE inventory;
CREATE DATABASE notifications;
CREATE DATABASE analytics;
CREATE DATABASE registry;
CREATE DATABASE payment_simulator;
CREATE DATABASE notification_simulator;
