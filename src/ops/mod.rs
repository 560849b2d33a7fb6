pub mod attention;
pub mod elementwise;
