export default 'checkout@1.1.0';
