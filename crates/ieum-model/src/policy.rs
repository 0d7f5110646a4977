//! Resilience policy types users write (timeouts, retries, budgets, breakers, …).
