export default 'search@2.0.0';
