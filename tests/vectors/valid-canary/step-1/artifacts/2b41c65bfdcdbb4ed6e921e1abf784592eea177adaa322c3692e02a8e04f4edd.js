export default 'search@2.1.0';
