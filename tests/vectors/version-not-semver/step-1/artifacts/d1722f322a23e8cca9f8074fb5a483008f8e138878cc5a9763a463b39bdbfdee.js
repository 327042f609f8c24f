export default 'checkout@1.0.0';
